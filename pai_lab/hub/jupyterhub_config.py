# The JupyterHub config `pai-lab up` runs (installed with the package; the repository's
# jupyterhub_config.py is the documented copy for deployers).
import os

import pai_lab.hub

c = get_config()  # noqa: F821  (provided by JupyterHub)

if os.environ.get("PAI_LAB_HUB_EXTRA_CONFIG"):
    # An extra config file applied before configure() (tests, local overrides).
    load_subconfig(os.environ["PAI_LAB_HUB_EXTRA_CONFIG"])  # noqa: F821

pai_lab.hub.configure(c)
