//! PeerTrust: federation with the pools of other sites.

pub mod handshake;
