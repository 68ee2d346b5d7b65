//! Destinations: object stores (a directory, S3), PostgreSQL and HTTP endpoints.

pub mod http;
pub mod objects;
pub mod postgres;
