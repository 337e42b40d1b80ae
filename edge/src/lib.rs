//! The streamhub edge node: it pulls rooms from the origins over the QUIC relay ([`pull`],
//! following the placement it learns from [`origins`]) and serves them to the viewers near it
//! with the media plane (`streamhub-media`); [`node`] wires it.

pub mod config;
pub mod node;
pub mod origins;
pub mod pull;
