import boto3
import json

kinesis = boto3.client('kinesis')

data = {'timestamp': '2021-01-01T00:00:00Z', 'value': 100}
data_bytes = json.dumps(data).encode('utf-8')

response = kinesis.put_record(
    StreamName='my-stream',
    PartitionKey='',
    Data=data_bytes
)
