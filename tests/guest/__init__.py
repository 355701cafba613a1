"""The project's own guest kernel under QEMU: builder, harness and the tests that run inside it."""
