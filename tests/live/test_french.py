"""French for agents and supervisors: pages, the decline sentence read aloud, and a complete .po."""

from __future__ import annotations

import ast
import gettext
import html as html_lib
import json
import re
from pathlib import Path

from django.conf import settings
from django.test import Client
from django.urls import reverse

from gateways.base import AGENT_MESSAGES
from securepay.live import hub, session_state
from securepay.models import Status
from tests.live.conftest import FUTURE_EXPIRY, key_card, open_session, session_in_card_entry

DECLINING = "4000000000000002"  # the sandbox declines it: card_declined
PO_PATH = Path(settings.BASE_DIR) / "locale" / "fr" / "LC_MESSAGES" / "django.po"


def french_client(world, role: str = "agent") -> Client:
    client = world.client_for(role)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "fr"
    return client


def page_labels(html: str) -> dict:
    match = re.search(r'<script id="page-labels" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the agent page carries its labels"
    return json.loads(match.group(1))


def shown_result_message(labels: dict, result: dict) -> str:
    """What static/agent.js shows under a declined or failed result."""
    stock = labels["agent_messages"].get(result["reason_code"])
    return stock["text"] if stock and stock["en"] == result["message"] else result["message"]


def test_agent_pages_in_french_when_the_agent_chose_french(alpha):
    client = french_client(alpha)
    session = open_session(alpha)
    html = client.get(reverse("agent-session", args=[session.pk])).content.decode()
    assert '<html lang="fr">' in html
    for text in ("Coordonnées du client", "Suivant", "Terminer la session", "Non sécurisé", "Se déconnecter",
                 "Agent"):
        assert text in html, text
    assert "Customer details" not in html and "End session" not in html

    session = session_in_card_entry(alpha)
    html = client.get(reverse("agent-session", args=[session.pk])).content.decode()
    for text in ("Numéro de carte", "Date d&#x27;expiration (MMAA)", "Cryptogramme visuel (CVV)",
                 "Valider le paiement", "Effacer", "Retour"):
        assert text in html, text
    labels = page_labels(html)
    assert labels["secured"] == "Sécurisé" and labels["declined"] == "Refusée"
    assert labels["connection_lost"] == "Connexion perdue. Reconnexion…"
    assert labels["keys_refused"].endswith(": %(count)s") and labels["keys_refused"].startswith("Touches")
    assert labels["hints"]["expired"] == "Cette carte a expiré."
    assert labels["break_reasons"]["hold"] == "Appelant en attente"

    home = client.get(reverse("agent-home")).content.decode()
    assert "Nouveau paiement" in home and "Vos paiements ouverts" in home


def test_tenant_default_locale_applies_until_the_user_switches(alpha):
    alpha.tenant.default_locale = "fr"
    alpha.tenant.save()
    session = open_session(alpha)
    url = reverse("agent-session", args=[session.pk])
    assert "Coordonnées du client" in alpha.client_for("agent").get(url).content.decode()
    live = alpha.client_for("supervisor").get(reverse("agent-live")).content.decode()
    assert "Paiements en cours" in live and "Superviseur" in live

    english = alpha.client_for("agent")
    english.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    assert "Customer details" in english.get(url).content.decode()


def test_login_page_in_french(db):
    for client, headers in ((Client(), {"HTTP_ACCEPT_LANGUAGE": "fr"}), (Client(), {})):
        if not headers:
            client.cookies[settings.LANGUAGE_COOKIE_NAME] = "fr"
        html = html_lib.unescape(client.get(reverse("login") + "?idle=1", **headers).content.decode())
        for text in ("Se connecter", "Nom d'utilisateur", "Mot de passe", "période d'inactivité"):
            assert text in html, text
        assert "Log in" not in html


def test_a_french_agent_reads_the_decline_in_french(alpha, django_capture_on_commit_callbacks):
    session = session_in_card_entry(alpha)
    hub.link(session.pk)
    key_card(session.pk, DECLINING + FUTURE_EXPIRY + "123")
    client = french_client(alpha)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("agent-session-process", args=[session.pk]))
    session.refresh_from_db()
    assert session.status == Status.DECLINED

    result = session_state(session)["result"]  # what the page's socket brings
    assert result["message"] == AGENT_MESSAGES[result["reason_code"]]  # stored in English
    html = client.get(reverse("agent-session", args=[session.pk])).content.decode()
    shown = shown_result_message(page_labels(html), result)
    assert shown == "La carte a été refusée. Veuillez demander une autre carte à l'appelant."

    english = alpha.client_for("agent")
    html = english.get(reverse("agent-session", args=[session.pk])).content.decode()
    assert shown_result_message(page_labels(html), result) == result["message"]
    # A gateway's own wording is shown as sent.
    custom = {**result, "message": "Declined by the issuer (code 05)."}
    assert shown_result_message(page_labels(html), custom) == custom["message"]


def test_every_stock_agent_message_is_translated(alpha):
    labels = page_labels(french_client(alpha).get(
        reverse("agent-session", args=[session_in_card_entry(alpha).pk])).content.decode())
    assert set(labels["agent_messages"]) == set(AGENT_MESSAGES)
    for code, english in AGENT_MESSAGES.items():
        assert labels["agent_messages"][code]["en"] == english
        assert labels["agent_messages"][code]["text"] not in ("", english), code


# --- the catalogue ------------------------------------------------------------------
def parse_po(path: Path) -> list[dict]:
    """Entries of a .po file: msgid, msgid_plural, msgstr (list), flags, obsolete."""
    entries, current, field = [], None, None

    def finish():
        if current is not None and "msgid" in current:
            entries.append(current)

    for raw in path.read_text(encoding="utf-8").splitlines() + [""]:
        line = raw.strip()
        obsolete = line.startswith("#~")
        if obsolete:
            line = line[2:].strip()
        if not line:
            finish()
            current, field = None, None
            continue
        if current is None:
            current = {"flags": set(), "msgstr": {}, "obsolete": False}
        current["obsolete"] |= obsolete
        if line.startswith("#,"):
            current["flags"] |= {flag.strip() for flag in line[2:].split(",")}
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            value = ast.literal_eval(line)
            if isinstance(field, tuple):
                current["msgstr"][field[1]] += value
            else:
                current[field] += value
        else:
            keyword, _, literal = line.partition(" ")
            value = ast.literal_eval(literal)
            match = re.fullmatch(r"msgstr(?:\[(\d+)\])?", keyword)
            if match:
                field = ("msgstr", int(match.group(1) or 0))
                current["msgstr"][field[1]] = value
            else:
                field = keyword
                current[field] = value
    return entries


def test_po_has_no_empty_fuzzy_or_obsolete_entry_and_mo_is_compiled():
    entries = [e for e in parse_po(PO_PATH) if e["msgid"]]  # the header has an empty msgid
    assert len(entries) > 150
    empty = [e["msgid"] for e in entries if not all(e["msgstr"].values())]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    obsolete = [e["msgid"] for e in entries if e["obsolete"]]
    assert (empty, fuzzy, obsolete) == ([], [], [])
    plural_forms = [e for e in entries if "msgid_plural" in e]
    assert all(sorted(e["msgstr"]) == [0, 1] for e in plural_forms)  # nplurals=2 for French

    for entry in entries:
        for placeholder in set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", entry["msgid"])):
            assert all(placeholder in text for text in entry["msgstr"].values()), (entry["msgid"], placeholder)

    # makemessages cannot see gateways.base.AGENT_MESSAGES: their msgids are kept by hand.
    translated = {e["msgid"]: e["msgstr"][0] for e in entries if "msgid_plural" not in e}
    missing = [english for english in AGENT_MESSAGES.values() if english not in translated]
    assert missing == []

    with open(PO_PATH.with_suffix(".mo"), "rb") as mo:
        catalogue = gettext.GNUTranslations(mo)
    stale = [msgid for msgid, msgstr in translated.items() if catalogue.gettext(msgid) != msgstr]
    assert stale == [], "run compilemessages"
