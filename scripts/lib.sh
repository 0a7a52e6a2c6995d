# Shared shell helpers for the project's scripts (sourced, not run).

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local port
  for port in $(shuf -i 20000-60000 -n 50); do
    if ! ss -Htln "sport = :$port" | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# Starts etcd on free loopback ports with its data in $1; sets ETCD_PID and ETCD_ENDPOINTS.
start_etcd() {
  local dir=$1 client peer
  client=$(free_port) && peer=$(free_port)
  etcd --name=demo --data-dir="$dir/data" \
    --listen-client-urls="http://127.0.0.1:$client" --advertise-client-urls="http://127.0.0.1:$client" \
    --listen-peer-urls="http://127.0.0.1:$peer" --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
    --initial-cluster="demo=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
  ETCD_PID=$!
  export ETCD_ENDPOINTS="http://127.0.0.1:$client"
  local deadline=$((SECONDS + 30))
  until curl -fsS "$ETCD_ENDPOINTS/health" 2>/dev/null | grep -q '"health":"true"'; do
    if ((SECONDS > deadline)) || ! kill -0 "$ETCD_PID" 2>/dev/null; then
      echo "etcd did not start; its log:" >&2
      cat "$dir/etcd.log" >&2
      return 1
    fi
    sleep 0.1
  done
}
