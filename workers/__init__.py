"""GPU-queue task entry points and the torch runtime (imported lazily)."""
