"""Hydra finds the strategy definitions shipped in the medmtl package (``pkg://medmtl.conf``: the
``optim`` group) beside the repository's ``conf/``, for every entry config (train, eval) and every
composition (``hydra.compose`` in tests and notebooks). A search-path plugin rather than
``hydra.searchpath`` in a config, which Hydra reads from the primary config only."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class MedMTLSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="medmtl", path="pkg://medmtl.conf")
