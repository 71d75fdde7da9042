"""I/O adapters: each turns a device or network peer into the core's typed events and back."""
