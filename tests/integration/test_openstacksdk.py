"""openstacksdk, unchanged, against a live Haven identity API on both backends."""

from __future__ import annotations

import openstack
import pytest
from openstack import exceptions

from tests.conftest import ADMIN_PASSWORD, CLIENT_ON_SQLITE, IdentityServer


def connect(server: IdentityServer, user: str, password: str,
            project: str) -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=f"{server.url}/v3", username=user, password=password, project_name=project,
        user_domain_id="default", project_domain_id="default", region_name="RegionOne",
        identity_api_version="3", load_yaml_config=False, load_envvars=False)


@CLIENT_ON_SQLITE
def test_sdk_admin_workflow_and_member_refusal(identity: IdentityServer) -> None:
    admin = connect(identity, "admin", ADMIN_PASSWORD, "admin")
    assert admin.authorize()
    project = admin.identity.create_project(name="sdk-proj", description="made by sdk")
    user = admin.identity.create_user(name="sdk-user", password="sdk-pw",
                                      default_project_id=project.id)
    member_role = admin.identity.find_role("member")
    admin.identity.assign_project_role_to_user(project, user, member_role)
    assert admin.identity.validate_user_has_project_role(project, user, member_role)
    assert {p.name for p in admin.identity.projects()} >= {"admin", "sdk-proj"}
    assert admin.identity.find_user("sdk-user").id == user.id

    member = connect(identity, "sdk-user", "sdk-pw", "sdk-proj")
    assert member.authorize()
    with pytest.raises(exceptions.ForbiddenException):
        member.identity.create_project(name="not-allowed")
    with pytest.raises(exceptions.ForbiddenException):
        list(member.identity.users())

    admin.identity.unassign_project_role_from_user(project, user, member_role)
    admin.identity.delete_user(user)
    admin.identity.delete_project(project)
    assert admin.identity.find_project("sdk-proj") is None


@CLIENT_ON_SQLITE
def test_sdk_wrong_password_is_401(identity: IdentityServer) -> None:
    with pytest.raises(exceptions.SDKException, match=r"HTTP 401"):
        connect(identity, "admin", "wrong", "admin").authorize()
