"""The NATS port: settings, the connection, the `Mesh` client, the work consumer, the embedded
server and reading the log, and (`processes`) how processes are started and stopped on
POSIX and on Windows. The only package that talks to nats-py, and the one place that
touches its internals (`mesh.bus.jetstream`) and turns NATS error codes into mesh errors."""
