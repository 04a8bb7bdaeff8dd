"""Script-injection payloads for the chat page, as user text and as model output.

Every payload that manages to run sets ``window.__xss`` (the browser tests assert it stays unset).
They cover raw HTML the Markdown renderer passes through, Markdown constructs that build links
and images, URL-scheme tricks, mutation XSS (markup that changes meaning when re-parsed) and
event handlers that fire without a click. Sources: the OWASP XSS Filter Evasion Cheat Sheet,
PortSwigger's XSS cheat sheet and DOMPurify's own test corpus, adapted to set the flag.
"""

FLAG = "window.__xss=1"

PAYLOADS: list[str] = [
    # Raw HTML that runs by itself.
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "<IMG SRC=x ONERROR=window.__xss=1>",
    '"><img src=x onerror=window.__xss=1>',
    "<svg onload=window.__xss=1>",
    "<svg><script>window.__xss=1</script></svg>",
    "<svg><animate onbegin=window.__xss=1 attributeName=x dur=1s>",
    "<body onload=window.__xss=1>",
    "<details open ontoggle=window.__xss=1><summary>x</summary></details>",
    "<input autofocus onfocus=window.__xss=1>",
    "<video><source onerror=window.__xss=1></video>",
    "<audio src=x onerror=window.__xss=1></audio>",
    '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    '<iframe src="javascript:parent.__xss=1"></iframe>',
    '<object data="data:text/html,<script>parent.__xss=1</script>"></object>',
    '<embed src="javascript:window.__xss=1">',
    "<marquee onstart=window.__xss=1>x</marquee>",
    '<style>@keyframes x{}</style><div style="animation-name:x" onanimationstart="window.__xss=1"></div>',
    '<div style="width:expression(window.__xss=1)">x</div>',
    '<meta http-equiv="refresh" content="0;url=javascript:window.__xss=1">',
    "<scr<script>ipt>window.__xss=1</scr</script>ipt>",
    # Mutation XSS: harmless as parsed once, dangerous when serialised and parsed again.
    '<noscript><p title="</noscript><img src=x onerror=window.__xss=1>">',
    "<svg><style><img src=x onerror=window.__xss=1></style></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__xss=1></style></mglyph></table></mtext></math>",
    '<form><math><mtext></form><form><mglyph><style></math><img src=x onerror="window.__xss=1">',
    "<template><img src=x onerror=window.__xss=1></template>",
    # Markdown links and images with script URLs (must come out inert).
    "[click me](javascript:window.__xss=1)",
    "[click me](JaVaScRiPt:window.__xss=1)",
    "[click me](&#106;avascript:window.__xss=1)",
    "[click me](javascript&colon;window.__xss=1)",
    "[click me](data:text/html,<script>window.__xss=1</script>)",
    "![alt](javascript:window.__xss=1)",
    '![x" onerror="window.__xss=1](x)',
    '<a href="jav&#x09;ascript:window.__xss=1">tab</a>',
    '<a href=" javascript:window.__xss=1">space</a>',
    '<svg><a xlink:href="javascript:window.__xss=1"><text x="20" y="20">x</text></a></svg>',
    # Markdown wrapping of raw HTML.
    "**bold <img src=x onerror=window.__xss=1>**",
    "> quote <svg onload=window.__xss=1>",
    "| a | b |\n|---|---|\n| <img src=x onerror=window.__xss=1> | x |",
    "- item <details open ontoggle=window.__xss=1>",
    # Code must stay text, even when it looks like HTML.
    "```html\n<img src=x onerror=window.__xss=1>\n```",
    "`<script>window.__xss=1</script>`",
]

# Images on other hosts must never be fetched: a tracking pixel tells its host who read the answer.
EXTERNAL_IMAGES: list[str] = [
    "![pixel](http://tracker.invalid/pixel.png)",
    '<img src="https://tracker.invalid/p.gif" alt="p">',
    "![proto-relative](//tracker.invalid/x.png)",
]
