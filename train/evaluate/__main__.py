from train.evaluate.score import main

main()
