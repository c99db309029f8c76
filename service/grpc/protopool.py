"""A private protobuf descriptor pool for the Open Inference Protocol stubs.

Our `inference.*` messages have the same full names as the ones tritonclient (and other
Triton-derived packages) register in protobuf's default pool, from older copies of the same
files. Two registrations of one symbol in one pool are an error, so a process that imported
both would crash. Our generated `inference` modules therefore build their descriptors here
(`make proto` rewrites them to), and the server hands reflection a pool that also holds the
other services' files.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

POOL = descriptor_pool.DescriptorPool()


def reflection_pool(*files: FileDescriptor) -> descriptor_pool.DescriptorPool:
    """POOL plus `files` (from the default pool) and their dependencies, for server reflection."""
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        try:
            POOL.FindFileByName(fd.name)
        except KeyError:
            POOL.AddSerializedFile(fd.serialized_pb)

    for fd in files:
        add(fd)
    return POOL
