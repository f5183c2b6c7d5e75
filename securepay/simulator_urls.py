"""The keypad simulator's pages; included only when KEYPAD_SIMULATOR_ENABLED."""

from django.urls import path

from securepay import simulator

urlpatterns = [
    path("", simulator.simulator_home, name="simulator-home"),
    path("call/<uuid:session_id>/", simulator.simulator_keypad, name="simulator-keypad"),
    path("call/<uuid:session_id>/key/", simulator.simulator_key, name="simulator-key"),
    path("call/<uuid:session_id>/event/", simulator.simulator_call, name="simulator-call"),
]
