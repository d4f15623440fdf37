"""A stand-in for the standard `ssl` module in taskhost's Python plugins.

componentize-py's interpreter has no `_ssl` (no OpenSSL), so the standard
`ssl` module fails to import, and with it every library that merely imports
`ssl` for its optional TLS: pg8000 (through scramp), redis-py, and others.
`taskhost build` installs this module as `ssl` when the standard one fails
to import: such libraries load and work over plain TCP, and anything that
actually asks for TLS fails with an error saying so.
"""

_WHY = (
    "TLS is not available in taskhost Python plugins (componentize-py's "
    "interpreter has no OpenSSL): connect without TLS, to a server the "
    "plugin's `tcp` grant names on a network you trust"
)


import enum


class SSLError(OSError):
    """What every attempt at TLS raises here."""


# The standard module's error types, which libraries name in `except`
# clauses at import time.
class SSLZeroReturnError(SSLError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLEOFError(SSLError):
    pass


class SSLCertVerificationError(SSLError, ValueError):
    pass


CertificateError = SSLCertVerificationError


class VerifyMode(enum.IntEnum):
    CERT_NONE = 0
    CERT_OPTIONAL = 1
    CERT_REQUIRED = 2


class VerifyFlags(enum.IntFlag):
    VERIFY_DEFAULT = 0
    VERIFY_CRL_CHECK_LEAF = 4
    VERIFY_CRL_CHECK_CHAIN = 12
    VERIFY_X509_STRICT = 32
    VERIFY_X509_PARTIAL_CHAIN = 0x80000


class TLSVersion(enum.IntEnum):
    MINIMUM_SUPPORTED = -2
    MAXIMUM_SUPPORTED = -1
    TLSv1_2 = 771
    TLSv1_3 = 772


class SSLObject:
    """Never made: nothing here wraps a connection."""


class SSLSocket:
    """Never made: nothing here wraps a socket."""


class SSLContext:
    def __init__(self, *args, **kwargs):
        raise SSLError(_WHY)


def create_default_context(*args, **kwargs):
    raise SSLError(_WHY)


def wrap_socket(*args, **kwargs):
    raise SSLError(_WHY)


def get_server_certificate(*args, **kwargs):
    raise SSLError(_WHY)


def get_default_verify_paths(*args, **kwargs):
    raise SSLError(_WHY)


def DER_cert_to_PEM_cert(*args, **kwargs):
    raise SSLError(_WHY)


class Purpose:
    SERVER_AUTH = "SERVER_AUTH"
    CLIENT_AUTH = "CLIENT_AUTH"


CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = tuple(VerifyMode)
PROTOCOL_TLS_CLIENT = 16
PROTOCOL_TLS_SERVER = 17
HAS_SNI = False
OPENSSL_VERSION = "none (taskhost Python plugin)"
