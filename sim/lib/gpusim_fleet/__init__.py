"""Fleet in a box: simulated GPU hosts as Linux namespaces with systemd and sshd.

Not part of the Galaxy collection build; see sim/FLEET.md.
"""
