"""Per-tenant gateway accounts: encrypted at rest, write-only in the admin, used to charge."""

from __future__ import annotations

from gateways.models import GatewayAccount, active_adapter
from gateways.stripe.adapter import StripeAdapter

ADD_URL = "/admin/gateways/gatewayaccount/add/"


def stripe_form(**overrides: str) -> dict[str, str]:
    return {"adapter": "stripe", "display_name": "Stripe", "active": "on", "transaction_type": "sale",
            "stripe__api_key": "sk_test_SECRET123", "stripe__api_base": "https://api.stripe.com", **overrides}


def test_credentials_are_encrypted_and_never_shown_again(alpha):
    admin = alpha.client_for("admin")
    assert admin.post(ADD_URL, stripe_form()).status_code == 302
    account = GatewayAccount.objects.get()
    assert account.tenant == alpha.tenant and account.credentials["api_key"] == "sk_test_SECRET123"
    assert "SECRET123" not in account.credentials_encrypted

    page = admin.get(f"/admin/gateways/gatewayaccount/{account.pk}/change/").content.decode()
    assert "SECRET123" not in page and "••• set" in page and "https://api.stripe.com" in page

    # Left blank: kept. Typed: replaced.
    assert admin.post(f"/admin/gateways/gatewayaccount/{account.pk}/change/",
                      stripe_form(display_name="Renamed", stripe__api_key="")).status_code == 302
    account.refresh_from_db()
    assert account.display_name == "Renamed" and account.credentials["api_key"] == "sk_test_SECRET123"
    admin.post(f"/admin/gateways/gatewayaccount/{account.pk}/change/", stripe_form(stripe__api_key="sk_test_NEW"))
    account.refresh_from_db()
    assert account.credentials["api_key"] == "sk_test_NEW"


def test_settings_are_checked_by_the_adapter(alpha):
    response = alpha.client_for("admin").post(ADD_URL, stripe_form(stripe__api_key=""))
    assert response.status_code == 200 and "is required" in response.content.decode()
    assert not GatewayAccount.objects.exists()


def test_tenant_without_account_uses_the_sandbox_and_with_one_its_gateway(alpha, beta):
    code, adapter = active_adapter(alpha.tenant)
    assert code == "sandbox" and adapter.config == {"merchant_id": "alpha"}
    account = GatewayAccount(tenant=alpha.tenant, adapter="stripe", display_name="Stripe")
    account.credentials = {"api_key": "sk_test_1"}
    account.save()
    code, adapter = active_adapter(alpha.tenant)
    assert code == "stripe" and isinstance(adapter, StripeAdapter)
    assert active_adapter(beta.tenant)[0] == "sandbox"


def test_accounts_are_walled_in_the_admin(alpha, beta):
    alpha.client_for("admin").post(ADD_URL, stripe_form())
    account = GatewayAccount.objects.get()
    listing = beta.client_for("admin").get("/admin/gateways/gatewayaccount/").content.decode()
    assert "Stripe" not in listing
    assert beta.client_for("admin").get(f"/admin/gateways/gatewayaccount/{account.pk}/change/").status_code in (
        302, 404)
    assert alpha.client_for("agent").get("/admin/gateways/gatewayaccount/").status_code == 302
