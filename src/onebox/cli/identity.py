"""``onebox users|projects|keys ...``: identities for the gateway and the console.

The CLI acts as the local operator (whoever can run it can read the store's files): it may
create the first users and keys; everything it changes is audited under ``local:<os user>``.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, err_console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem
from onebox.security.principal import PERMISSIONS, ROLES
from onebox.services import apikeys, identity

users_app = typer.Typer(
    help="Users: create, list, roles in projects, disable, reset passwords.", no_args_is_help=True
)
projects_app = typer.Typer(help="Projects (tenants): create and list.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)

RoleOpt = Annotated[str, typer.Option(help=f"Role in the project: {', '.join(ROLES)}.")]
ProjectOpt = Annotated[str | None, typer.Option(help="Project (default: the current one, ONEBOX_PROJECT).")]


def _password(stdin: bool, prompt: str = "Password") -> str:
    if stdin:
        import sys

        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"{prompt}: ")
    if getpass.getpass(f"{prompt} (again): ") != first:
        raise InvalidInputError(
            "the passwords differ", problems=[Problem("password", "typed twice differently")]
        )
    return first


def _user_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("user", "admin", "status", "projects (role)", "last login")
    for u in rows:
        projects = ", ".join(f"{p} ({r})" for p, r in u["projects"].items()) or "-"
        status = u["status"] + (" [yellow](must change password)[/]" if u["must_change_password"] else "")
        last = (u["last_login_at"] or "-")[:19].replace("T", " ")
        table.add_row(u["username"], "yes" if u["is_admin"] else "", status, projects, last)
    return table


@users_app.command("bootstrap")
def bootstrap(
    username: Annotated[str, typer.Option(help="Name of the first administrator.")] = "admin",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read its password from stdin.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create the first administrator (once). Without a password (stdin or ONEBOX_ADMIN_PASSWORD) one
    is generated, printed once, and must be changed at first login."""
    pw = _password(True) if password_stdin else None
    out = identity.bootstrap_admin(get_app(), username, pw)
    if json_out:
        print_json(out)
        return
    if not out["created"]:
        console.print("an administrator already exists; nothing done")
        return
    console.print(f"[green]created administrator[/] {out['user']['username']}")
    if out["password"]:
        console.print(
            f"  generated password: [bold]{out['password']}[/]  (shown once; change it at first login)"
        )


@users_app.command("create")
def create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: RoleOpt = "developer",
    project: ProjectOpt = None,
    admin: Annotated[bool, typer.Option("--admin", help="System administrator (all projects).")] = False,
    display_name: Annotated[str, typer.Option(help="Name shown in the console.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a user with a role in a project."""
    pw = _password(password_stdin)
    out = identity.create_user(
        get_app(), username, pw, project=project, role=role, is_admin=admin, display_name=display_name
    )
    if json_out:
        print_json(out)
    else:
        console.print(_user_table([out]))


@users_app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List users and their roles."""
    rows = identity.list_users(get_app())
    if json_out:
        print_json(rows)
    else:
        console.print(_user_table(rows))


@users_app.command("set-role")
def set_role(
    username: Annotated[str, typer.Argument(help="User.")],
    role: Annotated[str, typer.Argument(help=f"One of {', '.join(ROLES)}.")],
    project: ProjectOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a user to a project, or change their role there."""
    out = identity.set_member(get_app(), username, role, project)
    print_json(out) if json_out else console.print(_user_table([out]))


@users_app.command("remove")
def remove(
    username: Annotated[str, typer.Argument(help="User.")],
    project: ProjectOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a user from a project (their keys there are revoked, their sessions end)."""
    out = identity.remove_member(get_app(), username, project)
    print_json(out) if json_out else console.print(_user_table([out]))


@users_app.command("disable")
def disable(username: Annotated[str, typer.Argument(help="User.")], json_out: JsonOpt = False) -> None:
    """Disable a user: every key and session stops working at once."""
    out = identity.set_status(get_app(), username, "disabled")
    print_json(out) if json_out else console.print(_user_table([out]))


@users_app.command("enable")
def enable(username: Annotated[str, typer.Argument(help="User.")], json_out: JsonOpt = False) -> None:
    """Enable a disabled user again."""
    out = identity.set_status(get_app(), username, "active")
    print_json(out) if json_out else console.print(_user_table([out]))


@users_app.command("reset-password")
def reset_password(
    username: Annotated[str, typer.Argument(help="User.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Set a temporary password that the user must change at next login."""
    identity.change_password(get_app(), _password(password_stdin, "New password"), username=username)
    console.print(f"password of {username} reset; they must change it at next login")


@projects_app.command("create")
def project_create(
    name: Annotated[str, typer.Argument(help="Project name.")],
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a project (tenant)."""
    out = identity.create_project(get_app(), name, description)
    print_json(out) if json_out else console.print(f"[green]created project[/] {out['name']} ({out['id']})")


@projects_app.command("list")
def project_list(json_out: JsonOpt = False) -> None:
    """List projects."""
    rows = identity.list_projects(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("project", "id", "status", "description")
    for p in rows:
        table.add_row(p["name"], p["id"], p["status"], p["description"])
    console.print(table)


@keys_app.command("create")
def key_create(
    user: Annotated[str, typer.Option(help="Owner of the key.")],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    project: ProjectOpt = None,
    scope: Annotated[
        list[str] | None, typer.Option(help=f"Limit the key (repeatable): {', '.join(PERMISSIONS)}.")
    ] = None,
    expires_days: Annotated[float, typer.Option(help="Days until it expires (0: never).")] = 90,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute on /v1.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute on /v1.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key. The key is printed once and never stored: keep it now."""
    out = apikeys.create_key(
        get_app(), name=name, username=user, project=project, scopes=scope or [],
        expires_days=expires_days or None, rpm=rpm, tpm=tpm,
    )  # fmt: skip
    if json_out:
        print_json(out)
        return
    err_console.print(
        f"created key {out['prefix']} ({out['id']}) for {out['user']} in {out['project']}, "
        f"expires {out['expires_at'] or 'never'}; it is shown once:"
    )
    console.print(out["secret"], highlight=False)


@keys_app.command("list")
def key_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked and expired keys.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List API keys (prefixes only; secrets are never stored)."""
    rows = apikeys.list_keys(get_app(), include_inactive=all_)
    if json_out:
        print_json(rows)
        return
    table = Table("id", "prefix", "name", "user", "project", "scopes", "state", "expires", "last used")
    for k in rows:
        scopes = ",".join(k["scopes"]) or "all"
        last = (k["last_used_at"] or "-")[:19].replace("T", " ")
        expires = (k["expires_at"] or "never")[:10]
        row = (k["id"], k["prefix"], k["name"], k["user"], k["project"], scopes, k["state"], expires, last)
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def key_revoke(
    key: Annotated[str, typer.Argument(help="Key id (key_...) or prefix (obx_...).")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a key; the next request with it is refused."""
    out = apikeys.revoke_key(get_app(), key)
    print_json(out) if json_out else console.print(f"revoked {out['prefix']} ({out['id']})")
