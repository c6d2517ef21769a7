"""The shell: the dashboard and menus, the processes (`run`, `web`, `worker`) and the commands that
combine several layers (`servers`). Nothing below imports it."""
