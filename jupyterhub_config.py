# JupyterHub configuration for pai-lab.  `pai-lab up` runs JupyterHub with this file;
# a Kubernetes (Z2JH) deployment loads the same file through hub.extraConfig or its image.
#
# pai_lab.hub.configure(c) wires everything: CPU/GPU profiles and the spawner, the
# authenticator (local accounts with admin approval by default), the idle culler, and the
# pai control plane as the hub service /services/pai/.  It only fills in what is not set
# yet: set things BEFORE the call to keep them, or AFTER it to override ours.
# See docs/hub.md for the full story.
import os

import pai_lab.hub

c = get_config()  # noqa: F821  (provided by JupyterHub)

# --- The few settings a deployer changes --------------------------------------------
# Where servers run: "local" (processes on this machine) or "kubernetes".
# c.PaiHub.mode = os.environ.get("PAI_LAB_MODE", "local")
# Hub database, cookie secret, admin password, user folders, control-plane data:
# c.PaiHub.data_dir = os.environ.get("PAI_LAB_DATA_DIR", "~/.pai-lab")
# Public address (pai-lab up --ip/--port set this):
# c.JupyterHub.bind_url = "http://127.0.0.1:8000"
# How people log in: "native" (default), "github", "gitlab" or "generic-oauth";
# for OAuth also set e.g. c.GitHubOAuthenticator.client_id/client_secret/oauth_callback_url
# and c.GitHubOAuthenticator.allowed_organizations (see docs/hub.md).
# c.PaiHub.authenticator = "native"
# c.Authenticator.admin_users = {"admin"}
# Profiles on offer (slug, display_name, cpu/mem limits, gpu, image, idle_timeout):
# c.Profiles.profiles = [...]   # default: pai_lab/hub/profiles.py DEFAULT_PROFILES
# Idle servers: each profile's idle_timeout; the hub-wide culler is the backstop.
# c.PaiHub.idle_cull_timeout = 3600
# GPUs handed out locally (default: all that `nvidia-smi -L` lists): PAI_LAB_GPUS="0,1"

if os.environ.get("PAI_LAB_HUB_EXTRA_CONFIG"):
    # Tests and `pai-lab up` may add a config file applied before configure().
    load_subconfig(os.environ["PAI_LAB_HUB_EXTRA_CONFIG"])  # noqa: F821

pai_lab.hub.configure(c)
