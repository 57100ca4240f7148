"""The rig board's protocol core: plain Python that runs under CPython and MicroPython.

Nothing here touches hardware or the clock: callers pass bytes in, get frames out, and say
what time it is (milliseconds). ``main.py`` drives it on a Raspberry Pi Pico; ``host.py``
drives it over pty pairs so the tests run the very same code against the gateway's drivers.
"""
