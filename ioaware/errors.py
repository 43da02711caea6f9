"""The exceptions ioaware raises at its API boundary: each says exactly what is wrong and what to do."""


class IOAwareError(Exception):
    """Base class of ioaware's own errors: `except ioaware.IOAwareError` catches every one of them.

    Examples:
        >>> import ioaware
        >>> issubclass(ioaware.ShapeError, ioaware.IOAwareError)
        True
    """


class ShapeError(IOAwareError, ValueError):
    """A tensor's shape (or a size argument) does not fit the op; also a `ValueError`.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 4, 2, 8)
        >>> ioaware.flash_attn(q, q[..., :4], q[..., :4])
        Traceback (most recent call last):
        ...
        ioaware.errors.ShapeError: flash_attn: head dims differ: q has 8, k and v have 4
    """


class DTypeError(IOAwareError, TypeError):
    """A tensor's dtype is not supported, or tensors that must share a dtype do not; also a `TypeError`.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 4, 2, 8)
        >>> try:
        ...     ioaware.flash_attn(q, q, q.double())
        ... except ioaware.DTypeError as e:
        ...     print(type(e).__name__)
        DTypeError
    """


class DeviceError(IOAwareError, ValueError):
    """Tensors that must live on one device do not, or the op needs a device that is not there.

    Examples:
        >>> import ioaware
        >>> raise ioaware.DeviceError("flash_attn: q is on cpu but k is on cuda:0")
        Traceback (most recent call last):
        ...
        ioaware.errors.DeviceError: flash_attn: q is on cpu but k is on cuda:0
    """


class UnsupportedError(IOAwareError, NotImplementedError):
    """A valid request that ioaware does not implement (yet); the message names the argument.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 4, 2, 512)
        >>> ioaware.flash_attn(q, q, q)
        Traceback (most recent call last):
        ...
        ioaware.errors.UnsupportedError: flash_attn: head_dim 512 is not supported; it must be between 1 and 256
    """
