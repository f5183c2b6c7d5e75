"""The Django admin is walled: a tenant admin sees and edits only their own tenant."""

from __future__ import annotations

from django.urls import reverse

from tenants.models import ApiKey, Membership, PageTemplate
from tests.walls import wall_test


@wall_test("admin")
def test_tenant_admin_gets_404_for_other_tenants_objects(alpha, beta):
    client = alpha.client_for("admin")
    own_template = PageTemplate.objects.get(tenant=alpha.tenant, slug="default")
    other_template = PageTemplate.objects.get(tenant=beta.tenant, slug="default")
    assert client.get(reverse("admin:tenants_pagetemplate_change", args=[own_template.pk])).status_code == 200
    # Django admin answers a hidden object with a redirect to the index plus a message;
    # what matters for the wall: the other tenant's object is never shown or changed.
    for url in [
        reverse("admin:tenants_pagetemplate_change", args=[other_template.pk]),
        reverse("admin:tenants_apikey_change", args=[beta.api_key.pk]),
        reverse("admin:tenants_membership_change", args=[Membership.objects.get(user=beta.agent).pk]),
        reverse("admin:tenants_tenant_change", args=[beta.tenant.pk]),
    ]:
        response = client.get(url, follow=True)
        assert b"beta" not in response.content.lower().replace(b"alphabeta", b""), url
        assert response.redirect_chain and response.redirect_chain[-1][0] == reverse("admin:index"), url


@wall_test("admin")
def test_tenant_admin_lists_only_own_tenant(alpha, beta):
    client = alpha.client_for("admin")
    page = client.get(reverse("admin:tenants_membership_changelist"))
    assert page.status_code == 200
    assert b"alpha-agent" in page.content and b"beta-agent" not in page.content
    keys = client.get(reverse("admin:tenants_apikey_changelist"))
    assert beta.api_key.prefix.encode() not in keys.content and alpha.api_key.prefix.encode() in keys.content


def test_tenant_admin_cannot_delete_other_tenants_objects(alpha, beta):
    client = alpha.client_for("admin")
    response = client.post(reverse("admin:tenants_apikey_delete", args=[beta.api_key.pk]), {"post": "yes"})
    assert response.status_code in (302, 404)
    assert ApiKey.objects.filter(pk=beta.api_key.pk).exists()


def test_agents_and_supervisors_have_no_admin(alpha):
    for role in ("agent", "supervisor"):
        response = alpha.client_for(role).get(reverse("admin:index"))
        assert response.status_code == 302 and reverse("admin:login") in response["Location"]


def test_api_key_created_in_admin_is_shown_once_and_stored_hashed(alpha):
    client = alpha.client_for("admin")
    response = client.post(reverse("admin:tenants_apikey_add"), {"name": "crm"}, follow=True)
    assert response.status_code == 200
    created = ApiKey.objects.get(tenant=alpha.tenant, name="crm")
    shown = [str(m) for m in response.context["messages"]]
    assert any(created.prefix in m and "not shown again" in m for m in shown)
    key = next(m for m in shown if "sp_" in m).split(": ", 1)[1]
    assert ApiKey.authenticate(key) == created


def test_tenant_admin_sees_own_webhook_secret_and_can_rotate_it(alpha, beta):
    client = alpha.client_for("admin")
    page = client.get(reverse("admin:tenants_tenant_change", args=[alpha.tenant.pk]))
    assert alpha.tenant.webhook_secret.encode() in page.content
    assert beta.tenant.webhook_secret.encode() not in page.content
    old_alpha, old_beta = alpha.tenant.webhook_secret, beta.tenant.webhook_secret
    # The action only reaches the admin's own tenant, even if another id is posted.
    client.post(
        reverse("admin:tenants_tenant_changelist"),
        {"action": "rotate_webhook_secret", "_selected_action": [alpha.tenant.pk, beta.tenant.pk]},
    )
    alpha.tenant.refresh_from_db()
    beta.tenant.refresh_from_db()
    assert alpha.tenant.webhook_secret != old_alpha and alpha.tenant.webhook_secret.startswith("whsec_")
    assert beta.tenant.webhook_secret == old_beta
