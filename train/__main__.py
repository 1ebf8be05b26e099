from train.run import main

main()
