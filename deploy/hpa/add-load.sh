#!/bin/sh
# Load the http-server replicas through the load balancer, as the paper's HPA/load/add-load.sh does
# with hey: python3 -m jiriaf.workloads.loadgen runs here and targets the http-lb pod's address.
#   usage: add-load.sh [NAMESPACE] [SECONDS] [RATE]      (defaults: default, 120, 20 requests/s)
# Watch the autoscaler meanwhile: kubectl -n NAMESPACE get hpa http-server-hpa --watch
set -eu
ns=${1:-default}
seconds=${2:-120}
rate=${3:-20}
ip=$(kubectl -n "$ns" get pods -l app=http-lb -o jsonpath='{.items[0].status.podIP}')
if [ -z "$ip" ]; then
    echo "error: no http-lb pod with an address in namespace $ns" >&2
    exit 1
fi
case "$ip" in
    127.*) remote="" ;;
    *) remote="--allow-remote" ;;
esac
exec python3 -m jiriaf.workloads.loadgen "http://$ip:8090/" --concurrency 4 --rate "$rate" \
    --duration "$seconds" $remote
