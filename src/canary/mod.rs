//! The canary workload (`secret-canary canary`): serves the SHA-256 digest of
//! the secret value it sees, never the value.
