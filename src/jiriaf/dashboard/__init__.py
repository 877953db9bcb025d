"""The web dashboard of the central service: a summary API and a plain HTML/JS page that polls it.

Mount it in the JCS app with::

    mount_dashboard(app, jcs.db, jcs.kube)
"""

from jiriaf.dashboard.router import STATIC_DIR, dashboard_router, dashboard_static, mount_dashboard

__all__ = ["STATIC_DIR", "dashboard_router", "dashboard_static", "mount_dashboard"]
