"""The cases, one module per family of fault; importing this package registers them all."""

from benchmarks.faults.cases import code, data, healthy, init, model, optimizer  # noqa: F401
