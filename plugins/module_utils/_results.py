# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the declarative modules (mig_layout, vgpu_devices, nvidia_driver) end: one apply result turned into the task's result."""
from __future__ import annotations

from typing import Callable, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpuvirt.fleet.plugins.module_utils._inputs import printable


def checked(cls: type, **kwargs) -> AnsibleModule:
    """`cls(**kwargs)` (AnsibleModule), except that its own argument errors (choices, types, required options), which
    quote the offending value raw, have every control character and escape in them escaped."""

    class Quoting(cls):  # type: ignore[misc,valid-type]
        checking = True

        def fail_json(self, msg, **extra):  # pylint: disable=arguments-differ
            super().fail_json(printable(str(msg)) if self.checking else msg, **extra)

    module = Quoting(**kwargs)
    module.checking = False
    return module


def finish(module: AnsibleModule, result: dict, diff: Optional[Callable[[dict], dict]] = None) -> None:
    """Exit with `result`: its warnings become task warnings, `diff(result)` the diff when --diff asks for one (none
    where it returns None), the before/after states are dropped (they are the diff's), and a failed result fails the
    task with its message (a missing Python library named the way Ansible names one); a success keeps a message only
    where it has one."""
    for warning in result.pop('warnings', []):
        module.warn(warning)
    shown = diff(result) if diff is not None and module._diff else None  # AnsibleModule has no public name for --diff
    if shown is not None:
        result['diff'] = shown
    result.pop('before', None)
    result.pop('after', None)
    if result.pop('failed'):
        if result.get('missing_library'):
            result['msg'] = missing_required_lib(result.pop('missing_library'))
        module.fail_json(**result)
    if not result.get('msg'):
        result.pop('msg', None)
    module.exit_json(**result)
