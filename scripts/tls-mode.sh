# Sourced by cluster.sh and cluster-test.sh: whether the local cluster speaks TLS.
#
# `make cluster-start TLS=1` makes a private CA and node certificates in run/tls/ (with
# `cookie-crud certs`) and marks the cluster as a TLS one (run/tls/on): every node then
# serves HTTPS to clients and mutual TLS to its peers (the certificates are the peer
# credential; no cluster secret). The mark stays until `make cluster-clean`, so restarting
# a node, or `make cluster-test`, needs no TLS=1 again.
TLS_DIR=run/tls

tls_on() { [ -f "$TLS_DIR/on" ]; }

scheme() { if tls_on; then echo https; else echo http; fi; }

# curl that trusts the cluster's CA when it speaks TLS.
curl() {
  if tls_on; then command curl --cacert "$TLS_DIR/ca.pem" "$@"; else command curl "$@"; fi
}
