"""Everything else is in pyproject.toml. This adds the one thing it cannot say: `pqqp_bench_lmeval.pth`, which
goes into site-packages (the install scheme's purelib, as a path under its data root) so that lm-eval finds
the `pqqp` model type with no action by the user (pqqp_bench_lmeval.py)."""

import os
import sysconfig

from setuptools import setup
from setuptools.dist import Distribution

SITE_PACKAGES = os.path.relpath(sysconfig.get_path("purelib"), sysconfig.get_path("data"))


class WithDataFiles(Distribution):
    """An editable install (`pip install -e .`) asks the distribution `has_data()`, which setuptools does not
    define (it has `has_data_files()`), and so would skip the data files: answer it."""

    def has_data(self) -> bool:
        return self.has_data_files()


setup(distclass=WithDataFiles, data_files=[(SITE_PACKAGES, ["pqqp_bench_lmeval.pth"])])
