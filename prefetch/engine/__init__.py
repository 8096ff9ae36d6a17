"""The engine: scheduler, executors, loop, shared memory. Internal; the public API is `prefetch`."""
