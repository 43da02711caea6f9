"""The exceptions ioaware raises at its API boundary: each says exactly what is wrong and what to do."""


class IOAwareError(Exception):
    """Base class of ioaware's own errors."""


class ShapeError(IOAwareError, ValueError):
    pass


class DTypeError(IOAwareError, TypeError):
    pass


class DeviceError(IOAwareError, ValueError):
    pass


class UnsupportedError(IOAwareError, NotImplementedError):
    pass
