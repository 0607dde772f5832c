"""prism.ffi: the seed's name for the app-node driver, an alias of
prism.driver kept so that code written against the seed's documentation
runs unchanged:

    from prism.ffi import PrismDriver, DriverConfig

New code imports prism.driver; both names are the same objects.
"""

from prism.driver import *  # noqa: F403  (the alias re-exports the driver's public names)
from prism.driver import __all__ as __all__
