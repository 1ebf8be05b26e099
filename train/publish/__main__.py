from train.publish.model import main

main()
