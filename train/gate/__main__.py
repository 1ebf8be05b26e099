from train.gate.fit import main

main()
