//! riptide-proto: the native gRPC API of Riptide (stream and admin services), its id newtypes
//! and its error codes.
//!
//! This crate holds only message and service definitions and their mappings; it runs no tasks
//! and depends on no other Riptide crate. The stream and admin services arrive with the streams
//! work; until then the crate is empty so that the workspace layout is in place.
