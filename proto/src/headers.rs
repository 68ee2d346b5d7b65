//! The gRPC metadata keys of Riptide's APIs, defined once for the nodes and the client.

/// Carried on every error status a node answers with: the [`crate::ErrorCode`]'s name, so
/// that a client recovers the exact code even where two codes share a gRPC status.
pub const ERROR_CODE_HEADER: &str = "x-riptide-error-code";

/// Set on a request one node forwards to another: how many times it has been forwarded so far
/// (absent, so 0, on a client's request).
pub const HOPS_HEADER: &str = "x-riptide-hops";

/// Set on an answer that another node served (a part of): that node's address (or id). The
/// client takes it as the shard's leader and refreshes its shard map.
pub const FORWARDED_TO_HEADER: &str = "x-riptide-forwarded-to";

/// Set on a write's answer when a node on its way had no answer from the shard's leader in
/// time, found that another node leads the shard now, and sent the records there as well: the
/// first copy may have been stored too, as after a client's retry. The client counts it as
/// one more attempt of each record the call carried.
pub const RESENT_HEADER: &str = "x-riptide-resent";
