"""The agent's pages under /pay/ (the signed launch link, /pay/launch/, lives in securepay.launch)."""

from django.urls import path

from securepay import agent_views

urlpatterns = [
    path("", agent_views.agent_home, name="agent-home"),
    path("live/", agent_views.live_sessions, name="agent-live"),
    path("s/<uuid:session_id>/", agent_views.agent_session, name="agent-session"),
    path("s/<uuid:session_id>/details/", agent_views.agent_session_details, name="agent-session-details"),
    path("s/<uuid:session_id>/process/", agent_views.agent_session_process, name="agent-session-process"),
    path("s/<uuid:session_id>/back/", agent_views.agent_session_back, name="agent-session-back"),
    path("s/<uuid:session_id>/end/", agent_views.agent_session_end, name="agent-session-end"),
]
