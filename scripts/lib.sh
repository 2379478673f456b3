# Helpers the scripts share: `. scripts/lib.sh` after `cd` to the repository.

# N distinct TCP ports on 127.0.0.1 that nothing listened on when asked
# (default 1), separated by spaces. Every server a script starts gets one,
# so a run never measures a server left over from an earlier run, or
# whatever else holds a fixed port.
free_ports() {
  python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "${1:-1}"
}

free_port() {
  free_ports 1
}

# A scratch directory in $work, and $pid for the one server a script runs
# at a time (empty while none runs): when the script exits, however it
# exits, that server is stopped and the directory removed.
scratch() {
  work=$(mktemp -d)
  pid=
  trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
}
