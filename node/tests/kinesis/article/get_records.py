import boto3
import json

kinesis = boto3.client('kinesis')

response = kinesis.get_records(
    StreamName='my-stream',
    ShardId='shardId-000000000000',
    Limit=10
)

records = response['Records']
for record in records:
    data = json.loads(record['Data'])
    print(data)
