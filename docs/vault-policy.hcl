# secret-canary: least-privilege Vault / OpenBao policy for the prober's
# store token. The prober writes a fresh random value to its canary paths
# on every run and, once per path, sets the KV v2 `max_versions` there.
# It never reads values back, lists, deletes or destroys: the write answer
# carries the new version and its created_time.
#
# Install:  vault policy write secret-canary docs/vault-policy.hcl
# Bind it to the prober's login (Kubernetes auth role, AppRole, or token).
# Keep the token's `default` policy: it allows token lookup-self and
# renew-self, which the prober uses to keep its token alive.
#
# Adjust `secret` (the KV v2 mount, `store.mount`) and `canary/` (the
# prober's `store.path_prefix`, default `canary/`) together: the prober
# refuses to write outside its prefix, and this policy makes the store
# refuse it too. Tested against a real OpenBao in tests/security.rs.

# Write a new version of a canary secret ("create" for a path's first
# version, "update" for the next ones).
path "secret/data/canary/*" {
  capabilities = ["create", "update"]
}

# Set max_versions on a canary path, so one version per run does not pile up.
path "secret/metadata/canary/*" {
  capabilities = ["create", "update"]
}

# ESO (or the Bank-Vaults webhook) needs read on the same paths under its
# own identity, never the prober's, e.g.:
#   path "secret/data/canary/*" { capabilities = ["read"] }
