aws kinesis create-stream --stream-name my-stream --shard-count 1
