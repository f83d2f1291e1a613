"""The admin dashboard at /admin: live figures per plan and kind, the plan switch and the A/B share,
recent generations and payments, provider health. Plain HTML rendered here and a small script that
refreshes it from /admin/data.json; nothing loaded from elsewhere.

`setup_dashboard(app)` is all web_app.py calls.
"""

from __future__ import annotations

from aiohttp import web

from bot.http.dashboard import routes
from bot.http.dashboard.auth import dashboard_password
from bot.http.dashboard.headers import secure_admin_answers
from bot.http.dashboard.static_files import load_static, static_handler
from bot.http.keys import SERVICES


def setup_dashboard(app: web.Application) -> None:
    """Add the dashboard's routes to an app that already holds its SERVICES and GENERATIONS."""
    app[routes.DASHBOARD] = routes.DashboardState(password=dashboard_password(app[SERVICES].settings))
    app.on_response_prepare.append(secure_admin_answers)
    app.router.add_get("/admin", routes.home)
    app.router.add_get("/admin/", routes.home)
    app.router.add_get("/admin/data.json", routes.data)
    app.router.add_get("/admin/login", routes.login_form)
    app.router.add_post("/admin/login", routes.login)
    app.router.add_post("/admin/logout", routes.logout)
    app.router.add_post("/admin/plan", routes.switch_plan)
    app.router.add_post("/admin/share", routes.set_share)
    app.router.add_get("/admin/static/{name}", static_handler(load_static()))
