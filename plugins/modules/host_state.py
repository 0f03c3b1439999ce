#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: host_state
short_description: Observe in one call whether what a role installed on a host is as declared, and write its files
version_added: 0.6.0
description:
  - One observation of a role's concern on a host, so that a rerun on an unchanged host costs one call instead of a
    check per file, unit and account, and any drift (a changed file, a stopped or disabled unit, a missing package)
    is still seen.
  - Compares the O(files) (content by SHA-1, owner, group, mode, or that they are directories, exist or are absent),
    the systemd O(units) (enabled, active, loaded from the file now on disk), the O(groups), the O(users) and the
    pinned packages of a virtualenv (O(python_packages)) with the declaration, and returns each difference as one line
    naming the item (RV(differences)); RV(in_place) is true only where there is none.
  - With O(write_files=true), the files given with their O(files[].content), the O(files[].state=directory) entries and
    the O(files[].state=absent) entries that differ are written, created or removed (atomically, owner and mode set
    before the file appears). With O(python_packages.wheels), the virtualenv and its pinned packages are installed
    from those wheels too, with O(write_accounts=true) the groups and users are created or fixed, and with
    O(write_units=true) the units are enabled, started or restarted. Nothing else is ever changed.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what it would write; writes nothing.
  diff_mode:
    support: none
options:
  files:
    description:
      - Files and directories the role leaves on the host.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description:
          - V(file) a regular file (with O(files[].content) or O(files[].checksum), its content is compared too),
            V(directory) a directory, V(absent) nothing at O(files[].path), V(present) anything at O(files[].path)
            (following links).
        type: str
        choices: [file, directory, absent, present]
        default: file
      content:
        description:
          - The file's content (text, written as UTF-8). Such a file is written where it differs and O(write_files=true).
        type: str
      content_base64:
        description:
          - The file's content as base64, for a binary file (a wheel, an archive). Otherwise as O(files[].content).
          - One of O(files[].content), O(files[].content_base64) and O(files[].checksum).
        type: str
        version_added: 0.7.0
      checksum:
        description:
          - The SHA-1 of the file's content, where the content is not given (observed only).
        type: str
      owner:
        description: The owner's user name (not compared where unset).
        type: str
      group:
        description: The group's name (not compared where unset).
        type: str
      mode:
        description: Octal permission digits, such as V(0644) (not compared where unset).
        type: str
      prune:
        description:
          - For a V(directory), a file name pattern such as V(*.py). Each regular file directly in the directory that
            matches it and that no other entry names is a difference, and is removed where O(write_files=true) (code
            a newer version no longer ships). Anything else that matches is reported, never removed.
        type: str
        version_added: 0.9.0
      validate:
        description:
          - For a file written here, a command that checks the new content before it replaces the old file, with
            C(%s) where the path of the temporary file goes, such as V(promtool check config %s) (as the
            C(validate) of M(ansible.builtin.template)). Where it exits non-zero the file is not written and the task
            fails with its output, naming the file.
          - Its program must be installed, unless O(files[].validate_optional=true).
        type: str
        version_added: 0.9.0
      validate_optional:
        description: Write the file unchecked where the O(files[].validate) program is not installed.
        type: bool
        default: false
        version_added: 0.9.0
  units:
    description:
      - systemd units and the state they must be in. A unit whose file changed on disk since systemd loaded it
        (it needs a daemon-reload) counts as a difference.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The unit name (C(.service) is added where the name has no suffix).
        type: str
        required: true
      enabled:
        description: Whether the unit must be enabled (not compared where unset).
        type: bool
      active:
        description: Whether the unit must be active (not compared where unset).
        type: bool
      restart:
        description:
          - With O(write_units=true), for a unit that is active and must stay active, V(on_change) restarts it where
            this call wrote, created or installed anything, V(always) restarts it (a change the caller made before
            this call), V(never) leaves it running.
        type: str
        choices: [never, on_change, always]
        default: never
        version_added: 0.9.0
  groups:
    description: Groups that must exist.
    type: list
    elements: str
    default: []
  users:
    description: Accounts that must exist, with the given primary group, supplementary groups, shell and home.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The user name.
        type: str
        required: true
      group:
        description: The primary group's name.
        type: str
      groups:
        description: Groups the user must be a member of (others are allowed).
        type: list
        elements: str
      shell:
        description: The login shell.
        type: str
      home:
        description: The home directory.
        type: str
  python_packages:
    description:
      - A virtualenv and the requirements it must hold. Only requirements pinned with C(==) can be proven by looking
        (the C(.dist-info) metadata of its site-packages); any other requirement counts as a difference.
    type: dict
    suboptions:
      venv:
        description: The virtualenv's directory (it must have C(bin/python)).
        type: path
        required: true
      requirements:
        description: Requirements such as C(bcrypt==5.0.0).
        type: list
        elements: str
        default: []
      wheels:
        description:
          - A directory on the host holding wheels of the O(python_packages.requirements) (it may be one of the
            O(files) this call writes). With O(write_files=true), where the observation finds a package difference,
            the virtualenv is created without pip where it has no C(bin/python), and each pinned requirement that is
            not installed at its version is installed from its wheel without starting pip, as
            C(pip install --no-index --find-links) would install it. The wheel is picked by the tags the
            virtualenv's interpreter supports, its RECORD hashes are verified, and an installed other version is
            removed first.
          - Where that cannot be decided exactly (a requirement not pinned with C(==), no wheel for this
            interpreter, a dependency neither in the requirements nor installed, a marker or version it cannot
            evaluate), nothing is installed and RV(python_packages.pip_needed) says why, for the role to run pip.
        type: path
        version_added: 0.9.0
      python:
        description: The interpreter that creates the virtualenv (C(python -m venv --without-pip)).
        type: path
        default: /usr/bin/python3
        version_added: 0.9.0
      system_site_packages:
        description: Create the virtualenv with C(--system-site-packages).
        type: bool
        default: false
        version_added: 0.9.0
  write_accounts:
    description:
      - With O(write_files=true) too, create the O(groups) that do not exist (system groups) and the O(users) that do
        not exist (system accounts; no home directory is created), and bring an existing user's primary group, shell
        and home to the declaration and add the supplementary groups it lacks (none is removed), with C(groupadd),
        C(useradd) and C(usermod), before the files are written (so that they can be owned by those accounts).
        RV(accounts) says what changed.
    type: bool
    default: false
    version_added: 0.9.0
  write_units:
    description:
      - With O(write_files=true) too, after the files, accounts and packages of this call, bring the O(units) to
        their state, C(systemctl) in the C locale. systemd is reloaded once where a unit's file was written by this
        call or changed on disk since systemd loaded it (by the enable, where one is enabled); then each unit is
        enabled or disabled, and started, stopped or restarted (O(units[].restart)). A unit whose start fails fails
        the task with systemctl's message. RV(units_changed) lists what was done.
      - Where O(python_packages.wheels) says pip must install the packages (RV(python_packages.pip_needed)), no unit
        is started or restarted by this call.
    type: bool
    default: false
    version_added: 0.9.0
  write_files:
    description:
      - Write, create or remove the O(files) entries that differ and can be fixed here (content given, directories,
        absent files). With V(false) the call only observes.
    type: bool
    default: true
notes:
  - A file given by O(files[].checksum) only, a directory that should be absent, owners or groups that do not exist,
    units (without O(write_units)), accounts (without O(write_accounts)) and packages (without
    O(python_packages.wheels)) are never changed; they are reported in RV(differences) for the role to fix.
seealso:
  - name: docs/scaling.md
    description: How the roles use one observation per concern to make a rerun cheap.
    link: https://github.com/gpuvirt/gpuvirt.fleet/blob/main/docs/scaling.md
'''

EXAMPLES = r'''
---
- name: Observe the exporter's files, unit, account and packages in one call
  gpuvirt.fleet.host_state:
    write_files: false
    files:
      - {path: /etc/systemd/system/gpuvirt-exporter.service, checksum: "{{ lookup('ansible.builtin.template', 'unit.j2') | hash('sha1') }}"}
      - {path: /etc/gpuvirt-exporter, state: directory, owner: root, group: gpuvirt-exporter, mode: "0750"}
    units:
      - {name: gpuvirt-exporter, enabled: true, active: true}
    users:
      - {name: gpuvirt-exporter, group: gpuvirt-exporter, shell: /usr/sbin/nologin}
    python_packages:
      venv: /opt/gpuvirt-exporter/venv
      requirements: [bcrypt==5.0.0]
  register: observed

- name: Write a set of files in one call
  gpuvirt.fleet.host_state:
    files:
      - {path: /opt/app/lib/a.py, content: "{{ lookup('ansible.builtin.file', 'a.py', rstrip=false) }}", owner: root, group: root, mode: "0644"}
'''

RETURN = r'''
in_place:
  description: Whether everything was as declared before this call (no difference).
  returned: always
  type: bool
  sample: true
differences:
  description: Each difference found before anything was written, one line naming the item.
  returned: always
  type: list
  elements: str
  sample: ["/etc/systemd/system/gpuvirt-exporter.service: content differs", "unit gpuvirt-exporter.service: inactive, not active"]
units_changed:
  description: With O(write_units=true), the C(systemctl) actions taken (in check mode, those it would take).
  returned: with O(write_units=true) and O(units)
  type: list
  elements: str
  version_added: 0.9.0
  sample: ["enable gpuvirt-exporter.service", "start gpuvirt-exporter.service"]
accounts:
  description:
    - With O(write_accounts=true), the accounts created or changed, one line each (in check mode, the differences
      that would be fixed).
  returned: with O(write_accounts=true) where an account differed
  type: list
  elements: str
  version_added: 0.9.0
  sample: ["group gpuvirt-exporter created", "user gpuvirt-exporter created"]
python_packages:
  description: What was done to the virtualenv from O(python_packages.wheels) (in check mode, what would be).
  returned: when O(python_packages.wheels) is given
  type: dict
  version_added: 0.9.0
  contains:
    venv_created:
      description: Whether the virtualenv was created.
      type: bool
      sample: true
    installed:
      description: Each requirement installed from its wheel, as C(name==version).
      type: list
      elements: str
      sample: ["bcrypt==5.0.0"]
    removed:
      description: Each other version removed before its replacement was installed.
      type: list
      elements: str
      sample: ["bcrypt==4.3.0"]
    pip_needed:
      description: Why the requirements must be installed by pip instead (nothing was installed); empty otherwise.
      type: str
      sample: "requirement 'bcrypt>=4' is not pinned with =="
written:
  description: The O(files) paths written, created or removed (in check mode or with O(write_files=false), those that would be).
  returned: always
  type: list
  elements: str
  sample: ["/opt/gpuvirt-exporter/lib/gpuvirt_exporter/server.py"]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _host_state, _results


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec={
            'files': {'type': 'list', 'elements': 'dict', 'default': [], 'options': _host_state.WRITE_FILE_OPTIONS},
            'units': {'type': 'list', 'elements': 'dict', 'default': [], 'options': _host_state.WRITE_UNIT_OPTIONS},
            'groups': {'type': 'list', 'elements': 'str', 'default': []},
            'users': {'type': 'list', 'elements': 'dict', 'default': [], 'options': {
                'name': {'type': 'str', 'required': True},
                'group': {'type': 'str'},
                'groups': {'type': 'list', 'elements': 'str'},
                'shell': {'type': 'str'},
                'home': {'type': 'str'},
            }},
            'python_packages': {'type': 'dict', 'options': {
                'venv': {'type': 'path', 'required': True},
                'requirements': {'type': 'list', 'elements': 'str', 'default': []},
                'wheels': {'type': 'path'},
                'python': {'type': 'path', 'default': '/usr/bin/python3'},
                'system_site_packages': {'type': 'bool', 'default': False},
            }},
            'write_files': {'type': 'bool', 'default': True},
            'write_accounts': {'type': 'bool', 'default': False},
            'write_units': {'type': 'bool', 'default': False},
        },
        supports_check_mode=True,
    )
    p = module.params
    write = p['write_files'] and not module.check_mode
    packages = p['python_packages'] or {}
    try:
        result = _host_state.observe(p, write, _host_state.systemctl_runner(module), module.run_command)
        if packages.get('wheels'):
            # after the files (the wheels may be among them); only where the observation found a package difference.
            # Imported here: an observation, the call of every rerun, does not load the installer.
            from ansible_collections.gpuvirt.fleet.plugins.module_utils import _wheels  # pylint: disable=import-outside-toplevel
            result['python_packages'] = {'venv_created': False, 'installed': [], 'removed': [], 'pip_needed': ''}
            if any(d.startswith('virtualenv %s:' % packages['venv']) for d in result['differences']):
                try:
                    result['python_packages'] = _wheels.converge(
                        module.run_command, packages['venv'], packages['python'], packages['system_site_packages'],
                        packages['wheels'], packages['requirements'], write)
                except _wheels.WheelError as exc:
                    module.fail_json(msg='python_packages: %s' % exc, **result)
        installed = result.get('python_packages', {})
        changed = bool(p['write_files'] and (result['written'] or result.get('accounts') or installed.get('installed')
                                             or installed.get('venv_created')))
        shown = result.pop('shown', None)
        if p['write_units'] and p['write_files'] and p['units']:
            # after everything else of this call; with pip still to run (pip_needed), nothing is started yet
            if shown is None:
                module.fail_json(msg='units: systemd did not answer (%s)' % '; '.join(d for d in result['differences'] if d.startswith('systemctl')),
                                 **result)
            if installed.get('pip_needed'):
                result['units_changed'] = []
            else:
                result['units_changed'] = _host_state.converge_units(p['units'], shown, result['written'], changed, write,
                                                                     _host_state.systemctl_runner(module))
            changed = changed or bool(result['units_changed'])
    except _host_state.HostStateError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg='cannot write %s: %s' % (exc.filename, exc.strerror))
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
