"""The gRPC transport: converts messages to core calls and maps domain errors to status codes."""
