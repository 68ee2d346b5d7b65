fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/riptide.proto");
    tonic_prost_build::configure()
        // Record data as `Bytes`: decoding slices it out of the received message instead of
        // copying it, and a record read from a log entry is sent without copying it first.
        .bytes(".riptide.v1.PutRecordsEntry.data")
        .bytes(".riptide.v1.PutRecordRequest.data")
        .bytes(".riptide.v1.Record.data")
        // Each message's buffer reserved at its size before encoding (see `codec.rs`).
        .codec_path("crate::codec::SizedCodec")
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/riptide.proto"], &["proto"])?;
    Ok(())
}
