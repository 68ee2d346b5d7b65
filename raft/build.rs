fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft_transport.proto");
    tonic_prost_build::configure()
        // Payloads as `Bytes`: decoding slices them out of the received message.
        .bytes(".riptide.raft.v1.RaftRequest")
        // Each message's buffer reserved at its size before encoding: an append of a few
        // hundred KiB is written into its buffer once instead of at every doubling.
        .codec_path("riptide_proto::codec::SizedCodec")
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/raft_transport.proto"], &["proto"])?;
    Ok(())
}
