from ndd.cli import console_main

console_main()
