from jaxconv.cli import main

main()
