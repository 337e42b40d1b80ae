//! Multi-process cluster harness (grows with the cluster and chaos issues).
