"""The web console (`mesh ui`): a read-only, live view of the log in a browser.

`index` keeps the newest events in memory with their lookups and the live folds of tasks and
workflows; `source` fills it from JetStream (then follows the log) or from an exported file and
says where agents and capabilities stand; `pages` and `views` render HTML on the server; `server`
is the aiohttp application, with server-sent events for live pages. It sits above `replay`
(timelines, time travel) and below `mesh.cli` (`mesh.cli.ui` starts it).
"""
